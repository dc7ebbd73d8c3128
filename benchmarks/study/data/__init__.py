"""Data of the study: sources, the synthetic phantom, the patient-level split, class imbalance
handling, augmentation and the batches both runners share."""
