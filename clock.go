package lmx

import (
	"sync"
	"sync/atomic"
	"time"
)

// msClock tells the time to the millisecond, the precision of a lock id,
// without reading the system clock on every grant: a read costs 50-100ns on
// some virtual machines, as much as the rest of an uncontended Lock. While
// grants come, a timer refreshes the time every millisecond; after a
// millisecond with no grant it stops, so an idle broker has no timer at all.
//
// Only in-process grants use it. Each tick wakes a thread, and on a machine
// whose idle CPUs sleep, the wake-up moves a network round trip's threads
// apart: a broker serving one client in a loop made a quarter fewer round
// trips with the clock ticking than without.
type msClock struct {
	ms   atomic.Int64 // unix milliseconds; 0 while stopped
	used atomic.Bool  // read since the last tick

	mu     sync.Mutex
	timer  *time.Timer // guarded by mu; nil while stopped
	closed bool        // guarded by mu
}

// now returns the current unix time in milliseconds, at most about a
// millisecond stale.
func (c *msClock) now() int64 {
	if !c.used.Load() {
		c.used.Store(true)
	}
	if ms := c.ms.Load(); ms != 0 {
		return ms
	}
	return c.start()
}

func (c *msClock) start() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	ms := time.Now().UnixMilli()
	if c.closed {
		return ms
	}
	c.ms.Store(ms)
	if c.timer == nil {
		c.timer = time.AfterFunc(time.Millisecond, c.tick)
	}
	return ms
}

func (c *msClock) tick() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || !c.used.Swap(false) {
		c.ms.Store(0)
		c.timer = nil
		return
	}
	c.ms.Store(time.Now().UnixMilli())
	c.timer.Reset(time.Millisecond)
}

// stop stops the clock for good; now still answers, reading the system clock.
func (c *msClock) stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	c.ms.Store(0)
	if c.timer != nil {
		c.timer.Stop()
		c.timer = nil
	}
}
