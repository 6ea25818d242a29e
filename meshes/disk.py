"""Generate meshes/disk.msh: the unit disk, for electrical-impedance-like cases (many current
patterns through its boundary).

Physical groups: 1 = boundary (the circle), 10 = the disk (surface).
Usage: ``python meshes/disk.py [--size 0.035]`` (needs the ``gmsh`` package).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gmsh


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=float, default=0.035, help="target element size")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".msh"))
    args = parser.parse_args()
    gmsh.initialize()
    gmsh.option.setNumber("General.Terminal", 0)
    gmsh.model.add("disk")
    disk = gmsh.model.occ.addDisk(0, 0, 0, 1, 1)
    gmsh.model.occ.synchronize()
    curves = [tag for _, tag in gmsh.model.getBoundary([(2, disk)], oriented=False)]
    gmsh.model.addPhysicalGroup(1, curves, 1, name="boundary")
    gmsh.model.addPhysicalGroup(2, [disk], 10, name="disk")
    gmsh.option.setNumber("Mesh.CharacteristicLengthMax", args.size)
    gmsh.model.mesh.generate(2)
    gmsh.option.setNumber("Mesh.MshFileVersion", 4.1)
    gmsh.write(str(args.out))
    gmsh.finalize()
    print(f"{args.out} written")


if __name__ == "__main__":
    main()
