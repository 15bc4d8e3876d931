"""The project is described in pyproject.toml; this file adds one build step to it.

`_perft_exp.pth` (a start-up line: `import _perft_exp; _perft_exp.install()`, see _perft_exp.py) must land
at the top of site-packages, where Python reads `.pth` files. A wheel installs what `build_py` puts in
build_lib; an editable wheel (`pip install -e .`, setuptools >= 64) ignores build_lib and installs what lands
in the install directory, the unpacked wheel. So the line is copied to whichever of the two the build packs.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "_perft_exp.pth"


class BuildPyWithPth(build_py):
    def run(self) -> None:
        super().run()
        root = self.get_finalized_command("install").install_lib if self.editable_mode else self.build_lib
        self.copy_file(PTH, str(Path(root, PTH)), preserve_mode=False)


setup(cmdclass={"build_py": BuildPyWithPth})
