"""The X/Y/Z plot (A1111.md §11) as a typed core: `values` (A1111's value syntax), `axes` (the axis
registry), `plan` (every cell's request, checked before any work), `runner` (one job over all cells,
models loaded once per value), `drawing` (grids with legends). `modules.extension_host.xyz_grid` is the one import
for the Script wrapper, the UI and the API."""
