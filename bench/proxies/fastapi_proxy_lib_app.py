"""fastapi-proxy-lib's ReverseHttpProxy as its docs show it, under Uvicorn (httptools, uvloop, no access log).

python bench/proxies/fastapi_proxy_lib_app.py --port 8002 --upstream http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse

import uvicorn
from fastapi_proxy_lib.fastapi.app import reverse_http_app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    app = reverse_http_app(base_url=args.upstream.rstrip("/") + "/")
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        proxy_headers=False,
    )


if __name__ == "__main__":
    main()
