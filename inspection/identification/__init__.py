"""Identification: which of a batch's designs lies on the tray, from its five photos and the designs' CAD meshes,
or why none can be named (empty tray, several parts, out of view, a part not in the batch, look-alikes too close
to call, materials the photos cannot tell apart). Geometry first (silhouettes in calibrated cameras), then the
part's reflectance among designs of the same geometry; no training and no model weights."""
