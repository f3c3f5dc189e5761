"""MURA musculoskeletal radiograph abnormality detection (thesis 4.2.4-4.2.6)."""
