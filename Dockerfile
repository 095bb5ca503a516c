# mini-PACS archive image: `docker build -t minipacs .`
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --system --create-home --home-dir /var/lib/pacs pacs
WORKDIR /opt/minipacs
COPY pyproject.toml README.md ./
COPY pacs ./pacs
COPY dicom_scp ./dicom_scp
COPY viewer_api ./viewer_api
COPY storage ./storage
RUN pip install --no-cache-dir . && python -c "import pacs, dicom_scp, storage"
USER pacs
ENV PACS_DATA_DIR=/var/lib/pacs/data PACS_DICOM_HOST=0.0.0.0 PACS_HTTP_HOST=0.0.0.0
EXPOSE 11112 8080
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
  CMD python -c "from pynetdicom import AE; ae = AE(); ae.add_requested_context('1.2.840.10008.1.1'); a = ae.associate('127.0.0.1', 11112, ae_title='MINIPACS'); ok = a.is_established and a.send_c_echo().Status == 0; a.release(); raise SystemExit(0 if ok else 1)"
CMD ["pacs", "serve"]
