"""Generate meshes/l_shape.msh: an L-shaped domain with small probe disks, for the cases.

The L is [0, 1]² without the square (½, 1]² (a re-entrant corner at (½, ½)). Probe disks of
radius ``--probe`` sit on a grid, those wholly inside the L kept: each is a surface physical group
``probe-<k>`` (tag 100 + k) where a measurement averages the state; the rest of the L is
``domain`` (tag 10). Curves: 1 = the outer boundary (every side of the L).
Usage: ``python meshes/l_shape.py [--size 0.035] [--probe 0.035] [--grid 6]`` (needs ``gmsh``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gmsh


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=float, default=0.035, help="target element size")
    parser.add_argument("--probe", type=float, default=0.035, help="probe radius")
    parser.add_argument("--grid", type=int, default=6, help="probe centres on a grid×grid grid")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".msh"))
    args = parser.parse_args()
    gmsh.initialize()
    gmsh.option.setNumber("General.Terminal", 0)
    gmsh.model.add("l_shape")
    occ = gmsh.model.occ
    square = occ.addRectangle(0, 0, 0, 1, 1)
    corner = occ.addRectangle(0.5, 0.5, 0, 0.5, 0.5)
    shape, _ = occ.cut([(2, square)], [(2, corner)])
    centres = [
        ((i + 0.5) / args.grid, (j + 0.5) / args.grid)
        for j in range(args.grid)
        for i in range(args.grid)
    ]
    margin = 1.5 * args.probe
    inside = [
        (x, y)
        for x, y in centres
        if margin < x < 1 - margin
        and margin < y < 1 - margin
        and not (x > 0.5 - margin and y > 0.5 - margin)
    ]
    disks = [occ.addDisk(x, y, 0, args.probe, args.probe) for x, y in inside]
    pieces, mapping = occ.fragment(shape, [(2, d) for d in disks])
    occ.synchronize()
    probe_surfaces = [m[0][1] for m in mapping[1:]]
    rest = [tag for dim, tag in pieces if dim == 2 and tag not in probe_surfaces]
    gmsh.model.addPhysicalGroup(2, rest, 10, name="domain")
    for k, surface in enumerate(probe_surfaces, start=1):
        gmsh.model.addPhysicalGroup(2, [surface], 100 + k, name=f"probe-{k}")
    boundary = gmsh.model.getBoundary([(2, t) for t in rest + probe_surfaces], oriented=False)
    gmsh.model.addPhysicalGroup(1, sorted({abs(tag) for _, tag in boundary}), 1, name="outer")
    gmsh.option.setNumber("Mesh.CharacteristicLengthMax", args.size)
    gmsh.model.mesh.generate(2)
    gmsh.option.setNumber("Mesh.MshFileVersion", 4.1)
    gmsh.write(str(args.out))
    gmsh.finalize()
    print(f"{args.out} written ({len(probe_surfaces)} probes)")


if __name__ == "__main__":
    main()
