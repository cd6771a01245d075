"""The classification methods, one module (or folder) each, all with the surface of
``methods.base.ClassifierBase``; ``registry`` maps ``--method`` names to them."""
