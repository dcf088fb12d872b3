// Command lmxbroker is the lean broker lmxbench starts in a child process,
// so that the broker's RSS is lmx's alone and not that of lmxbench's
// dependencies (etcd, Redis clients). It listens on -listen, a unix:// or
// tcp:// URL, prints "ready URL" and serves until its stdin closes or it
// gets SIGTERM.
package main

import (
	"flag"
	"os"

	"github.com/lmx-go/lmx/bench/internal/childsrv"
)

func main() {
	listen := flag.String("listen", "", "the `URL` to serve on: unix:///path or tcp://127.0.0.1:0")
	maxSessions := flag.Int("max-sessions", 0, "sessions open at once (0: lmx.DefaultMaxSessions)")
	flag.Parse()
	os.Exit(childsrv.Broker("lmxbroker", *listen, *maxSessions))
}
