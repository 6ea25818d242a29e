"""Generate meshes/unit_square.msh: an unstructured triangulation of the unit square.

The square [0, 1]² meshed by gmsh's frontal-Delaunay algorithm (no symmetry, no structured
rows of points), for the PINN cases that compare with the built-in box. Physical groups: the
surface ``domain`` (tag 10) and its four sides ``bottom`` (1), ``right`` (2), ``top`` (3),
``left`` (4).
Usage: ``python meshes/unit_square.py [--size 0.05]`` (needs ``gmsh``; the default size gives
about as many triangles, 946, as the 21 × 21 box's 882).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gmsh


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=float, default=0.05, help="target element size")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".msh"))
    args = parser.parse_args()
    gmsh.initialize()
    gmsh.option.setNumber("General.Terminal", 0)
    gmsh.model.add("unit_square")
    occ = gmsh.model.occ
    square = occ.addRectangle(0, 0, 0, 1, 1)
    occ.synchronize()
    gmsh.model.addPhysicalGroup(2, [square], 10, name="domain")
    sides = {}
    for _, curve in gmsh.model.getBoundary([(2, square)], oriented=False):
        x, y, _ = gmsh.model.occ.getCenterOfMass(1, abs(curve))
        name = "bottom" if y < 1e-9 else "top" if y > 1 - 1e-9 else "left" if x < 1e-9 else "right"
        sides[name] = abs(curve)
    for tag, name in enumerate(("bottom", "right", "top", "left"), start=1):
        gmsh.model.addPhysicalGroup(1, [sides[name]], tag, name=name)
    gmsh.option.setNumber("Mesh.Algorithm", 6)  # frontal-Delaunay
    gmsh.option.setNumber("Mesh.CharacteristicLengthMax", args.size)
    gmsh.model.mesh.generate(2)
    gmsh.option.setNumber("Mesh.MshFileVersion", 4.1)
    gmsh.write(str(args.out))
    _, elements, _ = gmsh.model.mesh.getElements(2)
    gmsh.finalize()
    print(f"{args.out} written ({len(elements[0])} triangles)")


if __name__ == "__main__":
    main()
