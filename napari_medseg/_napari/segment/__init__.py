"""The Segment dock widget, split as napari-nninteractive splits its widget: widget_gui (layout) ->
controls (layer glue) -> main (model calls)."""
