"""LUNA16 nodule false-positive reduction as 2D patch classification (thesis 4.2.1-4.2.3)."""
