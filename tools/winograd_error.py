"""How much Winograd's transforms round, in float32: F(2x2, 3x3) (engine/cpu/winograd.cpp)
and F(4x4, 3x3) (engine/cpu/winograd_lanes.cpp) against the direct 3x3 correlation
computed in float64, on one tile per sample summed over C input channels of uniform
[-1, 1] data and filters, as a convolution layer sums them.

    /usr/bin/python3 tools/winograd_error.py [C=70] [samples=4000]

Prints, per method, the RMS and the largest error, and both relative to the outputs' RMS.
The F(4x4, 3x3) matrices are those with interpolation points 0, 1, -1, 2, -2 and
infinity (Lavin and Gray 2016), as winograd_lanes.cpp uses them; the points 1/2 and
-1/2 in place of 2 and -2 (Barabasz et al. 2020) round the same here.
"""
import sys
import torch

F2 = dict(AT=[[1, 1, 1, 0], [0, 1, -1, -1]],
          G=[[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]],
          BT=[[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]])
F4 = dict(AT=[[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
          G=[[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
             [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
          BT=[[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
              [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]])


def errors(method, channels, samples, gen):
    AT, G, BT = (torch.tensor(method[k], dtype=torch.float64) for k in ("AT", "G", "BT"))
    patch, tile = BT.shape[0], AT.shape[0]
    d = torch.rand(samples, channels, patch, patch, dtype=torch.float64, generator=gen) * 2 - 1
    g = torch.rand(samples, channels, 3, 3, dtype=torch.float64, generator=gen) * 2 - 1
    direct = sum(d[:, :, i:i + tile, j:j + tile] * g[:, :, i:i + 1, j:j + 1]
                 for i in range(3) for j in range(3)).sum(1)
    f = torch.float32
    U = G.to(f) @ g.to(f) @ G.T.to(f)
    V = BT.to(f) @ d.to(f) @ BT.T.to(f)
    Y = AT.to(f) @ (U * V).sum(1) @ AT.T.to(f)
    err = (Y.double() - direct).abs()
    return err.pow(2).mean().sqrt().item(), err.max().item(), direct.pow(2).mean().sqrt().item()


def main():
    channels = int(sys.argv[1]) if len(sys.argv) > 1 else 70
    samples = int(sys.argv[2]) if len(sys.argv) > 2 else 4000
    gen = torch.Generator().manual_seed(0)
    print(f"{channels} channels, {samples} tiles; errors against float64, absolute and / output RMS")
    for name, method in (("F(2x2, 3x3)", F2), ("F(4x4, 3x3)", F4)):
        rms, worst, scale = errors(method, channels, samples, gen)
        print(f"{name}: RMS {rms:.2e} ({rms / scale:.1e}), largest {worst:.2e} ({worst / scale:.1e}); "
              f"output RMS {scale:.2f}")


if __name__ == "__main__":
    main()
