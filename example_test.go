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
