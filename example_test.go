package lmx_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/lmx-go/lmx"
)

// A broker in the process is a table of named mutexes.
func Example() {
	b := lmx.NewBroker()
	defer b.Close()
	ctx := context.Background()

	var wg sync.WaitGroup
	balance := 0
	for range 10 {
		wg.Go(func() {
			l, err := b.Lock(ctx, "accounts/7")
			if err != nil {
				panic(err)
			}
			defer l.Unlock(ctx)
			balance += 10 // only one goroutine at a time is here
		})
	}
	wg.Wait()
	fmt.Println(balance)
	// Output: 100
}

// Limit makes a key a semaphore: here, at most two downloads at once.
func ExampleLimit() {
	b := lmx.NewBroker()
	defer b.Close()
	ctx := context.Background()

	first, _ := b.TryLock(ctx, "downloads", lmx.Limit(2))
	second, _ := b.TryLock(ctx, "downloads", lmx.Limit(2))
	_, err := b.TryLock(ctx, "downloads", lmx.Limit(2))
	fmt.Println("third:", err)

	first.Unlock(ctx)
	third, err := b.TryLock(ctx, "downloads", lmx.Limit(2))
	fmt.Println("third after a release:", err)
	second.Unlock(ctx)
	third.Unlock(ctx)
	// Output:
	// third: lmx: key is locked
	// third after a release: <nil>
}

// A lease with a TTL ends by itself; Done tells the holder.
func ExampleTTL() {
	b := lmx.NewBroker()
	defer b.Close()
	ctx := context.Background()

	l, err := b.Lock(ctx, "report", lmx.TTL(20*time.Millisecond))
	if err != nil {
		panic(err)
	}
	<-l.Done() // a real holder would select on this beside its work
	fmt.Println(errors.Is(l.Err(), lmx.ErrExpired), errors.Is(l.Err(), lmx.ErrLeaseLost))
	fmt.Println(l.Unlock(ctx))
	// Output:
	// true true
	// lmx: lease not held: lmx: lease lost: lmx: lease expired
}

// A fence lets the protected resource refuse a holder whose lease was lost
// while it was paused.
func ExampleFence() {
	b := lmx.NewBroker()
	defer b.Close()
	ctx := context.Background()
	var storage lmx.Fence

	slow, _ := b.Lock(ctx, "file", lmx.TTL(time.Millisecond))
	<-slow.Done() // the slow holder is paused past its TTL...
	fast, _ := b.Lock(ctx, "file")
	fmt.Println("new holder writes:", storage.Check("file", fast.Token()))
	// ...and wakes up believing it still holds the lock.
	fmt.Println("old holder writes:", errors.Is(storage.Check("file", slow.Token()), lmx.ErrStaleToken))
	fast.Unlock(ctx)
	// Output:
	// new holder writes: <nil>
	// old holder writes: true
}

// LockAll takes several keys as one, in an order that cannot deadlock with
// other callers; each key has its own fencing token.
func ExampleBroker_LockAll() {
	b := lmx.NewBroker()
	defer b.Close()
	ctx := context.Background()

	l, err := b.LockAll(ctx, []string{"accounts/9", "accounts/3"})
	if err != nil {
		panic(err)
	}
	for _, p := range l.Parts() {
		fmt.Println("holding", p.Key())
	}
	_, err = b.TryLock(ctx, "accounts/9")
	fmt.Println(err)
	l.Unlock(ctx)
	// Output:
	// holding accounts/3
	// holding accounts/9
	// lmx: key is locked
}

// A waiter of higher priority may ask holders of lower priority to make way.
func ExamplePreempt() {
	b := lmx.NewBroker()
	defer b.Close()
	ctx := context.Background()

	batch, _ := b.Lock(ctx, "gpu", lmx.Priority(1))
	go func() {
		<-batch.Revoked() // asked to make way: finish up and let go
		fmt.Println("batch job: checkpointing")
		batch.Unlock(ctx)
	}()
	urgent, err := b.Lock(ctx, "gpu", lmx.Priority(9), lmx.Preempt(time.Second))
	if err != nil {
		panic(err)
	}
	fmt.Println("urgent job has the gpu; batch job's lease:", batch.Err())
	urgent.Unlock(ctx)
	// Output:
	// batch job: checkpointing
	// urgent job has the gpu; batch job's lease: lmx: lease released
}

// Watch streams what happens to the keys under a prefix.
func ExampleBroker_Watch() {
	b := lmx.NewBroker()
	defer b.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	events, _ := b.Watch(ctx, "jobs/")
	l, _ := b.Lock(ctx, "jobs/nightly", lmx.Owner("worker-7"))
	l.Unlock(ctx)
	for range 2 {
		ev := <-events
		fmt.Println(ev.Type, ev.Key, ev.Owner)
	}
	// Output:
	// acquired jobs/nightly worker-7
	// released jobs/nightly worker-7
}

// One candidate leads at a time; the others wait their turn.
func ExampleElection() {
	b := lmx.NewBroker()
	defer b.Close()
	ctx := context.Background()

	a := lmx.NewElection(b, "scheduler")
	leadership, err := a.Campaign(ctx, "node-a")
	if err != nil {
		panic(err)
	}
	leader, _ := lmx.NewElection(b, "scheduler").Leader(ctx)
	fmt.Println("leader:", leader)
	a.Resign(ctx, leadership)
	_, err = a.Leader(ctx)
	fmt.Println(err)
	// Output:
	// leader: node-a
	// lmx: election has no leader
}

// A broker serves its table to other processes on a Unix socket (or TCP);
// Dial connects to it, and the client's locks are the broker's locks.
func ExampleBroker_Listen() {
	dir, err := os.MkdirTemp("", "lmx")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "lmx.sock")
	ctx := context.Background()

	b := lmx.NewBroker()
	if _, err := b.Listen("unix", sock); err != nil {
		panic(err) // the path is taken by a live broker, or not writable
	}
	defer b.Shutdown(ctx)

	c, err := lmx.Dial(ctx, "unix://"+sock) // in another process, as a rule
	if err != nil {
		panic(err)
	}
	defer c.Close()
	l, err := c.Lock(ctx, "invoices/42", lmx.TTL(30*time.Second))
	if err != nil {
		panic(err)
	}
	_, err = b.TryLock(ctx, "invoices/42") // the broker's own code sees it held
	fmt.Println(errors.Is(err, lmx.ErrLocked))
	l.Unlock(ctx)
	// Output: true
}

// Dial reaches a broker over TCP; Release by id ends a lease from any
// client, given the id as text (ParseID).
func ExampleDial() {
	ctx := context.Background()
	b := lmx.NewBroker()
	addr, err := b.Listen("tcp", "127.0.0.1:0") // port 0: the system picks one
	if err != nil {
		panic(err)
	}
	defer b.Shutdown(ctx)

	c, err := lmx.Dial(ctx, "tcp://"+addr.String())
	if err != nil {
		panic(err) // nothing listens there, or it is not an lmx broker
	}
	defer c.Close()
	l, err := c.Lock(ctx, "deploy", lmx.TTL(time.Minute), lmx.KeepOnDisconnect())
	if err != nil {
		panic(err)
	}
	text := l.ID().String() // as `lmx acquire` prints it, or a job queue stores it

	id, err := lmx.ParseID(text)
	if err != nil {
		panic(err)
	}
	fmt.Println(b.Release(ctx, "deploy", id))
	<-l.Done()
	fmt.Println(errors.Is(l.Err(), lmx.ErrReleased))
	_, err = lmx.ParseID("notanid")
	fmt.Println(errors.Is(err, lmx.ErrInvalidID))
	// Output:
	// <nil>
	// true
	// true
}

// Open lets configuration choose the door: mem:// for a broker in the
// process, unix:// or tcp:// for a broker elsewhere, and the schemes of the
// backends imported (etcd://).
func ExampleOpen() {
	ctx := context.Background()
	b := lmx.NewBroker()
	addr, err := b.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer b.Shutdown(ctx)

	for _, url := range []string{"mem://", "tcp://" + addr.String()} {
		locker, err := lmx.Open(ctx, url)
		if err != nil {
			panic(err)
		}
		l, err := locker.Lock(ctx, "reports/daily")
		if err != nil {
			panic(err)
		}
		fmt.Println(strings.SplitN(url, ":", 2)[0], "token > 0:", l.Token() > 0)
		l.Unlock(ctx)
		if c, ok := locker.(io.Closer); ok {
			c.Close()
		}
	}
	// Output:
	// mem token > 0: true
	// tcp token > 0: true
}

// Ensure makes the first of many processes the broker and the rest its
// clients: here the first call starts a broker, the second finds it.
func ExampleEnsure() {
	dir, err := os.MkdirTemp("", "lmx")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	addr := "unix://" + filepath.Join(dir, "lmx.sock")
	ctx := context.Background()

	c1, b, err := lmx.Ensure(ctx, addr, nil)
	if err != nil {
		panic(err)
	}
	defer b.Shutdown(ctx) // this process started it: it keeps it alive
	defer c1.Close()
	c2, b2, err := lmx.Ensure(ctx, addr, nil)
	if err != nil {
		panic(err)
	}
	defer c2.Close()
	fmt.Println("first started a broker:", b != nil)
	fmt.Println("second started one:", b2 != nil)

	l, err := c1.Lock(ctx, "migrations")
	if err != nil {
		panic(err)
	}
	_, err = c2.TryLock(ctx, "migrations")
	fmt.Println(errors.Is(err, lmx.ErrLocked))
	l.Unlock(ctx)
	// Output:
	// first started a broker: true
	// second started one: false
	// true
}
