package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/lmx-go/lmx"
)

// demo walks through what an in-process broker does, printing as it goes.
func demo(ctx context.Context, w io.Writer) error {
	b := lmx.NewBroker()
	defer b.Close()

	fmt.Fprintln(w, "== FIFO hand-off: three workers queue for one key")
	first, err := b.Lock(ctx, "printer")
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "main     holds printer (token %d)\n", first.Token())
	granted := make(chan string)
	for i, name := range []string{"worker-1", "worker-2", "worker-3"} {
		go func() {
			l, err := b.Lock(ctx, "printer")
			if err != nil {
				granted <- fmt.Sprintf("%s: %v", name, err)
				return
			}
			granted <- fmt.Sprintf("%s got printer (token %d)", name, l.Token())
			l.Unlock(ctx)
		}()
		if err := waitQueued(ctx, b, "printer", i+1); err != nil {
			return err
		}
	}
	first.Unlock(ctx)
	for range 3 {
		fmt.Fprintln(w, <-granted)
	}

	fmt.Fprintln(w, "== a semaphore: two download slots")
	var slots []*lmx.Lease
	for i := 1; i <= 3; i++ {
		l, err := b.TryLock(ctx, "downloads", lmx.Limit(2))
		fmt.Fprintf(w, "download %d: %v\n", i, errOrOK(err))
		if err == nil {
			slots = append(slots, l)
		}
	}
	for _, l := range slots {
		l.Unlock(ctx)
	}

	fmt.Fprintln(w, "== a TTL: the holder stalls, the lease ends, the next holder is fenced in")
	var store lmx.Fence
	stalled, err := b.Lock(ctx, "report", lmx.TTL(50*time.Millisecond))
	if err != nil {
		return err
	}
	<-stalled.Done()
	fmt.Fprintf(w, "stalled holder's lease ended: %v\n", stalled.Err())
	next, err := b.Lock(ctx, "report")
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "next holder writes with token %d: %v\n", next.Token(), errOrOK(store.Check("report", next.Token())))
	fmt.Fprintf(w, "stalled holder writes with token %d: %v\n", stalled.Token(), errOrOK(store.Check("report", stalled.Token())))
	if err := next.Unlock(ctx); err != nil {
		return err
	}
	return demoNetwork(ctx, w, b)
}

// demoNetwork serves the broker's table on a Unix socket, and has a client
// and the process itself contend for one key.
func demoNetwork(ctx context.Context, w io.Writer, b *lmx.Broker) error {
	fmt.Fprintln(w, "== the same table over a Unix socket")
	dir, err := os.MkdirTemp("", "lmx-demo")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "lmx.sock")
	if _, err := b.Listen("unix", sock); err != nil {
		return err
	}
	c, err := lmx.Dial(ctx, "unix://"+sock)
	if err != nil {
		return err
	}
	defer c.Close()
	remote, err := c.Lock(ctx, "deploy", lmx.TTL(time.Minute))
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "client   holds deploy (token %d)\n", remote.Token())
	if _, err := b.TryLock(ctx, "deploy"); err != nil {
		fmt.Fprintf(w, "broker's own TryLock: %v\n", err)
	}
	local := make(chan *lmx.Lease)
	go func() {
		l, _ := b.Lock(ctx, "deploy")
		local <- l
	}()
	if err := waitQueued(ctx, b, "deploy", 1); err != nil {
		return err
	}
	if err := remote.Unlock(ctx); err != nil {
		return err
	}
	l := <-local
	fmt.Fprintf(w, "broker   got deploy when the client let go (token %d)\n", l.Token())
	return l.Unlock(ctx)
}

// waitQueued waits until key has n waiters, so that the demo's workers
// queue in the order they were started.
func waitQueued(ctx context.Context, b *lmx.Broker, key string, n int) error {
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if ki, err := b.Inspect(ctx, key); err != nil || len(ki.Waiters) == n {
			return err
		}
	}
	return errors.New("a worker did not queue in time")
}

func errOrOK(err error) string {
	if err != nil {
		return err.Error()
	}
	return "ok"
}
