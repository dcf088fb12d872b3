// Package childsrv is what lmxbench's child servers share: the lmx broker that
// both cmd/lmxbroker and lmxbench (re-executed) run, and how a child knows
// it is time to stop.
package childsrv

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/lmx-go/lmx"
)

// Broker listens on url, a unix:// or tcp:// URL, prints "ready URL" and
// serves until WaitStop returns; name prefixes its errors. maxSessions is
// passed to lmx.WithMaxSessions (0: the default). It returns the process's
// exit status.
func Broker(name, url string, maxSessions int) int {
	network, address, ok := strings.Cut(url, "://")
	if !ok {
		fmt.Fprintf(os.Stderr, "%s: want unix:///path or tcp://host:port, not %q\n", name, url)
		return 2
	}
	b := lmx.NewBroker(lmx.WithMaxSessions(maxSessions))
	defer b.Close()
	a, err := b.Listen(network, address)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		return 1
	}
	fmt.Printf("ready %s://%s\n", a.Network(), a.String())
	WaitStop()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	b.Shutdown(ctx)
	return 0
}

// WaitStop returns when stdin closes or a SIGTERM or SIGINT comes.
func WaitStop() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
	eof := make(chan struct{})
	go func() {
		io.Copy(io.Discard, os.Stdin)
		close(eof)
	}()
	select {
	case <-sig:
	case <-eof:
	}
}
