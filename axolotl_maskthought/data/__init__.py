"""Data: the CoT formats and their token layouts (``formats``), file readers and writers
(``files``), the dataset-type registry (``registry``) and problem generators (``generators``)."""
