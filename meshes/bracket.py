"""Generate meshes/bracket.msh: an L-shaped mounting bracket with bolt holes, for the 3D case.

A base flange 2 × 1 × 0.25 and an upright flange 0.25 × 1 × 1 at x = 0, two bolt holes through
the base and one through the upright. Physical groups: 1 = the mounting face (x = 0), 2 = the
bolt holes' walls, 3 = the rest of the surface (faces), 10 = the bracket (volume).
Usage: ``python meshes/bracket.py [--size 0.07]`` (needs the ``gmsh`` package).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gmsh


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=float, default=0.036, help="target element size")
    parser.add_argument("--radius", type=float, default=0.12, help="bolt hole radius")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".msh"))
    args = parser.parse_args()
    gmsh.initialize()
    gmsh.option.setNumber("General.Terminal", 0)
    gmsh.model.add("bracket")
    occ = gmsh.model.occ
    base = occ.addBox(0, 0, 0, 2, 1, 0.25)
    upright = occ.addBox(0, 0, 0, 0.25, 1, 1)
    body, _ = occ.fuse([(3, base)], [(3, upright)])
    r = args.radius
    holes = [
        occ.addCylinder(1.1, 0.3, -0.1, 0, 0, 0.45, r),
        occ.addCylinder(1.6, 0.7, -0.1, 0, 0, 0.45, r),
        occ.addCylinder(-0.1, 0.5, 0.65, 0.45, 0, 0, r),
    ]
    bracket, _ = occ.cut(body, [(3, h) for h in holes])
    occ.synchronize()
    mount, walls, rest = [], [], []
    for _, tag in gmsh.model.getBoundary(bracket, oriented=False):
        kind = gmsh.model.getType(2, tag)
        x, _, _ = occ.getCenterOfMass(2, tag)
        if kind == "Plane" and abs(x) < 1e-9:
            mount.append(tag)
        elif kind == "Cylinder":
            walls.append(tag)
        else:
            rest.append(tag)
    gmsh.model.addPhysicalGroup(2, mount, 1, name="mount")
    gmsh.model.addPhysicalGroup(2, walls, 2, name="bolts")
    gmsh.model.addPhysicalGroup(2, rest, 3, name="surface")
    gmsh.model.addPhysicalGroup(3, [bracket[0][1]], 10, name="bracket")
    gmsh.option.setNumber("Mesh.CharacteristicLengthMax", args.size)
    gmsh.model.mesh.generate(3)
    gmsh.option.setNumber("Mesh.MshFileVersion", 4.1)
    gmsh.option.setNumber("Mesh.Binary", 1)  # a third of the text file's size
    gmsh.write(str(args.out))
    nodes = gmsh.model.mesh.getNodes()[0].size
    gmsh.finalize()
    print(f"{args.out} written ({nodes} nodes)")


if __name__ == "__main__":
    main()
