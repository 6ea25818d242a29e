"""Generate meshes/plate_with_hole.msh: the unit square with a circular hole, for the cases.

Physical groups: 1 = outer boundary, 2 = hole boundary (curves), 10 = the plate (surface).
Usage: ``python meshes/plate_with_hole.py [--size 0.04]`` (needs the ``gmsh`` package).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gmsh


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=float, default=0.04, help="target element size")
    parser.add_argument("--radius", type=float, default=0.15)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".msh"))
    args = parser.parse_args()
    gmsh.initialize()
    gmsh.option.setNumber("General.Terminal", 0)
    gmsh.model.add("plate_with_hole")
    square = gmsh.model.occ.addRectangle(0, 0, 0, 1, 1)
    hole = gmsh.model.occ.addDisk(0.5, 0.5, 0, args.radius, args.radius)
    plate, _ = gmsh.model.occ.cut([(2, square)], [(2, hole)])
    gmsh.model.occ.synchronize()
    curves = gmsh.model.getBoundary(plate, oriented=False)
    outer, inner = [], []
    for _, tag in curves:
        x, y, _ = gmsh.model.occ.getCenterOfMass(1, tag)
        (inner if (x - 0.5) ** 2 + (y - 0.5) ** 2 < (args.radius + 1e-6) ** 2 else outer).append(
            tag
        )
    gmsh.model.addPhysicalGroup(1, outer, 1, name="outer")
    gmsh.model.addPhysicalGroup(1, inner, 2, name="hole")
    gmsh.model.addPhysicalGroup(2, [plate[0][1]], 10, name="plate")
    gmsh.option.setNumber("Mesh.CharacteristicLengthMax", args.size)
    gmsh.model.mesh.generate(2)
    gmsh.option.setNumber("Mesh.MshFileVersion", 4.1)
    gmsh.write(str(args.out))
    gmsh.finalize()
    print(f"{args.out} written")


if __name__ == "__main__":
    main()
