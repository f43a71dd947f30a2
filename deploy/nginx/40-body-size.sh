#!/bin/sh
# Run by the nginx image's entrypoint before nginx starts: lets bodies through that are
# a little over MAX_CHUNK_SIZE (the multipart framing around a chunk), so the service,
# not nginx, answers an oversized chunk with its own 413 envelope.
set -eu
limit=$(( ${MAX_CHUNK_SIZE:-67108864} + 1048576 ))
echo "client_max_body_size ${limit};" > /etc/nginx/conf.d/body-size.inc
