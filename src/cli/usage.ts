/** The `nbd-engine serve` help text (`nbd-engine --help`). Other subcommands print their own. */
export const USAGE = `usage: nbd-engine serve [options] [--filter=NAME ...] [BACKEND [[KEY=]VALUE ...]]
       nbd-engine serve [options] [--memory SIZE | --file PATH]
       nbd-engine -V | --version

The export (default: memory 1G), nbdkit's way or with the options:
  BACKEND [[KEY=]VALUE ...]  a backend and its parameters: memory 1G, memory size=1G, file disk.img
  --filter=NAME          stack a filter over the backend (repeatable; the first is closest to the client);
                         each KEY=VALUE goes to the first filter that declares KEY, else to the backend
  --memory SIZE          = memory size=SIZE (sizes: 1048576, 512M, 1G, 16T)
  --file PATH            = file file=PATH (a file or block device)
  -e, --export NAME      export name (default: "" — the default export; also --exportname, --export-name)
  --description TEXT     export description (NBD_INFO_DESCRIPTION, LIST)
  -r, --read-only        refuse writes (also --readonly)

Listening (default: UNIX socket and TCP localhost:10809):
  -U, --socket PATH      UNIX socket (also --unix; "-": a private socket in a new temporary directory;
                         refused if a server answers there; a stale one is replaced)
  -p, --port N           TCP port, 0 to 65535 (0: any free port)
  -i, --host HOST        TCP host (default localhost; use :: for all; also --ipaddr, --ip-addr)
  -s, --single           serve one connection on stdin/stdout, then exit (also --stdin; logs go to stderr)
  --print-uri            print the URIs on stdout (the default when serving; with --run, before CMD starts)
  -P, --pidfile FILE     write the process id to FILE once listening (also --pid-file; not removed at exit)
  --exit-with-parent     exit when the parent process exits (noticed within 250 ms: it is polled)
  -f, --foreground       accepted for nbdkit's sake: nbd-engine never forks (also --no-fork)
  (systemd socket activation via LISTEN_FDS/LISTEN_PID is detected automatically)

TLS:
  --tls off|on|require   NOTLS, SELECTIVETLS or FORCEDTLS (default off; on when credentials are given, as nbdkit)
  --tls-certificates DIR  DIR/server-cert.pem, DIR/server-key.pem and DIR/ca-cert.pem (if present), as nbdkit
  --tls-cert FILE        PEM certificate        --tls-key FILE   PEM private key
  --tls-ca FILE          CA for client certs     --tls-verify-peer  require client certs
  --tls-psk FILE         psktool key file (username:hexkey lines)

Limits (per connection unless noted):
  --max-in-flight N            requests with the backend at once (default 64; 1 to 1048576)
  --max-in-flight-bytes SIZE   bytes owed: requests in flight plus unsent replies (default 128M)
  --max-payload SIZE           largest READ / WRITE (default 64M; 512 to 2G)
  --max-options N              options before a disconnect (default 128; 1 to 1048576)
  --max-extents N              descriptors per BLOCK_STATUS reply (default 65536; 1 to 1048576)
  --max-connections N          connections at once, server-wide (default unlimited)
  --max-queued-reply-bytes SIZE  unsent replies before reading pauses (default 4M)
  --max-option-length SIZE     largest option data parsed (default 64K; 256 to 64M)
  --max-option-skip SIZE       largest option data skipped (ERR_TOO_BIG) before a disconnect (default 64M)
  --max-payload-skip SIZE      largest WRITE payload skipped (EINVAL) before a disconnect (default 4G-1)
  --max-buffered-bytes SIZE    bytes a connection's decoder may hold (default max-payload + 1M)
  --read-buffer-pool SIZE      idle READ buffers kept for reuse, server-wide (default 32M; 0: none)
  --handshake-timeout SECONDS  time to finish negotiating (default 10; 0: off)
  --idle-timeout SECONDS       close a connection idle this long (default 0: off)
  --linger-timeout SECONDS     drop a connection the server ended if the client has not closed it
                               this long after the last reply (default 2)
  --shutdown-timeout SECONDS   at a stop signal, let requests in flight finish this long (default 5; 0: close at once)

Other:
  --run CMD              run CMD with $uri (= $nbd), $unixsocket, $port, $exportname, $tls set; exit with its status
  --strict               report every client protocol violation (a warning with its rule ID); with --run,
                         a summary at exit and exit status 3 if any
  --inspect[=PORT]       live view of every connection's machines at http://127.0.0.1:PORT/ (default 10880)
  --trace FILE           record every connection to FILE (JSON Lines; read it with nbd-engine trace show)
  --trace-max SIZE       trace file size cap (default 64M); at the cap recording stops with an end record
  --trace-rotate N       at the cap rotate instead: FILE becomes FILE.1 …, N old files kept (default 0: stop)
  --trace-prefix N       record the first N payload bytes as hex (default 0: lengths only; at most 4096)
  --no-warm-up           skip the start-up warm-up (a throwaway in-process connection that has the
                         connection code compiled before the first client; it adds ~0.1 s to start-up)
  -v, --verbose          log connections and protocol decisions
  -h, --help             this text, with every backend and filter and its parameters
  -V, --version          print the version
  nbd-engine probe URI   check any NBD server against the spec's rules (--help)
  nbd-engine machines    draw the protocol statecharts (mermaid, dot, json, svg; --help)
  nbd-engine trace       read a trace file: trace show FILE [--connection N] [--follow] [--no-machines]
                         trace view FILE -o OUT.html: one offline HTML page (statecharts, steps, coverage)
`;
