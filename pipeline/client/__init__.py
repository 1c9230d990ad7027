"""Clients of a trained model: in process, TF Serving gRPC, PACS (DICOMweb)."""
