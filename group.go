package lmx

import "sync"

// A group counts the goroutines it starts, so that their owner can wait for
// all of them: every background goroutine of the broker and its doors
// starts through a group's start (as nats-server's startGoRoutine), and
// Close waits for them.
type group struct {
	mu     sync.Mutex
	closed bool           // guarded by mu
	wg     sync.WaitGroup // Add under mu, before closed
}

// start runs f in a goroutine of the group, unless the group is closed.
func (g *group) start(f func()) bool {
	if !g.enter() {
		return false
	}
	go func() {
		defer g.wg.Done()
		f()
	}()
	return true
}

// run runs f, counted as one of the group's goroutines, on the calling
// goroutine (a timer's, say), unless the group is closed.
func (g *group) run(f func()) {
	if !g.enter() {
		return
	}
	defer g.wg.Done()
	f()
}

func (g *group) enter() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	g.wg.Add(1)
	return true
}

// close makes start refuse from now on.
func (g *group) close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
}

// wait waits for the group's goroutines.
func (g *group) wait() { g.wg.Wait() }
