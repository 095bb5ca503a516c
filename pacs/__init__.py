"""Mini-PACS: the product (ingest, query, retrieve, render) behind the protocol adapters."""
