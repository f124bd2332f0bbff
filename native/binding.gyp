{
  "targets": [
    {
      "target_name": "nbd_file",
      "sources": ["nbd_file.c"],
      "cflags": ["-O2", "-Wall", "-Wextra"],
      "defines": ["NAPI_VERSION=8"]
    }
  ]
}
