package lmx_test

import (
	"context"
	"errors"
	"fmt"
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
