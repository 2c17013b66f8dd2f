"""Every decision the MedSegRWKV Slicer module makes, in code that runs without Slicer.

Nothing here imports slicer, qt, ctk or torch (the module never loads torch into Slicer's
process); `geometry` uses vtk, which Slicer bundles and the tests install as a wheel. The thin
code in MedSegRWKV.py only moves values between these functions and Slicer's nodes and widgets.

- protocol:     requests to the `medsegrwkv engine` worker and parsing of its answers
- client:       the worker process: start, send, poll, detect death or silence, restart, close
- geometry:     markups ROI -> voxel box, fit ROI to volume, slice index -> RAS for jumping views
- panel:        model and device choices, phase and progress texts, the About text
- quality:      motion-grade table rows, colours, summary line and plot
- cardiac:      cardiac-function results table, summary, volume-time plot, options, corrected labelmaps
- plots:        a plot (columns, series, titles) as data, for the module's one plotting function
- terminology:  segment names, colours and Slicer terminology strings from a model manifest
- dependencies: torch / backend checks and the install plan for Slicer's Python
- ui_contract:  the widgets (object name -> class) that MedSegRWKV.py expects in the .ui file
"""
