// The reference table: every kernel of the list set to its reference. A kernel added to
// POLYAK_KERNELS without a reference in engine/ref fails to compile (or to link) here.
#include "engine/ref/kernels.h"

namespace polyak {

const Kernels& reference_kernels() {
  static const Kernels table = [] {
    Kernels k;
#define POLYAK_SET_REFERENCE(name, type) k.name = &ref::name;
    POLYAK_KERNELS(POLYAK_SET_REFERENCE)
#undef POLYAK_SET_REFERENCE
    return k;
  }();
  return table;
}

}  // namespace polyak
