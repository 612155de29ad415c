#!/usr/bin/env bash
# Renders an HTML report (apps/report) in headless Chromium and checks it:
#   - the page loads and a screenshot is written (look at it: the plots must be legible);
#   - the console shows no script errors ("Uncaught ...") and no failed loads (the page
#     must be self-contained);
#   - the DOM Chromium built holds as many <svg> plots as the file.
# Usage: tools/check_report.sh REPORT.html [SCREENSHOT.png] [WINDOW_HEIGHT]
# Needs Chromium (Debian: apt-get install -y chromium). Exit status 0 when all checks pass.
set -euo pipefail

report=${1:?usage: tools/check_report.sh REPORT.html [SCREENSHOT.png] [WINDOW_HEIGHT]}
screenshot=${2:-${report%.html}.png}
height=${3:-2400}
[[ -f $report ]] || { echo "check_report: $report: no such file" >&2; exit 2; }

browser=""
for candidate in chromium chromium-browser google-chrome; do
  if command -v "$candidate" >/dev/null; then browser=$candidate; break; fi
done
[[ -n $browser ]] || { echo "check_report: Chromium not found (apt-get install -y chromium)" >&2; exit 2; }

url="file://$(realpath "$report")"
profile=$(mktemp -d)
log=$(mktemp)
trap 'rm -rf "$profile" "$log"' EXIT
# --no-sandbox: Chromium refuses to run as root otherwise (CI containers).
flags=(--headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update
       --disable-sync --no-first-run --hide-scrollbars --user-data-dir="$profile"
       --enable-logging=stderr --v=0)

rm -f "$screenshot"
timeout 120 "$browser" "${flags[@]}" --window-size=1280,"$height" --screenshot="$screenshot" "$url" 2>"$log" >/dev/null || true
status=0
if [[ -s $screenshot ]]; then
  echo "check_report: screenshot $screenshot ($(stat -c %s "$screenshot") bytes, 1280x$height)"
else
  echo "check_report: FAIL: no screenshot written" >&2
  status=1
fi
if grep -E 'Uncaught|CONSOLE.*[Ee]rror|Failed to load resource|net::ERR_' "$log" >&2; then
  echo "check_report: FAIL: the page logged the errors above" >&2
  status=1
else
  echo "check_report: no script errors or failed loads in the console"
fi

dom=$(timeout 120 "$browser" "${flags[@]}" --dump-dom "$url" 2>/dev/null || true)
in_file=$(grep -o '<svg' "$report" | wc -l)
in_dom=$(grep -o '<svg' <<<"$dom" | wc -l)
if [[ $in_dom -eq $in_file && $in_file -gt 0 ]]; then
  echo "check_report: $in_dom svg plots in the rendered DOM"
else
  echo "check_report: FAIL: $in_file <svg> in the file but $in_dom in the rendered DOM" >&2
  status=1
fi
exit $status
