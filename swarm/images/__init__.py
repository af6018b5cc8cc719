"""Docker adapter: export an image into zstd blobs, stream blobs back into `docker load`.

docker_client  connect to an engine (DockerUnreachable when it does not answer)
export         `docker save` stream or archive -> blobs + ExportedImage
load           blobs -> legacy-layout tar stream -> `docker load`
synthetic      deterministic test images built FROM scratch
"""
