"""Run by launch.py once per version of this file, in a subprocess, before the server starts.
Install what the extension needs here; this one needs nothing beyond Atelier's requirements."""

import launch

if not launch.is_installed("pillow"):
    launch.run_pip("install pillow", "pillow for example-extension")
