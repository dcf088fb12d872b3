package lmx

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/oklog/ulid/v2"
)

// An EventType says what happened to a lease.
type EventType uint8

// Event types. Every lease gives one Acquired event and then exactly one of
// the others, except Lagged, which stands for events a watcher missed.
const (
	EventAcquired    EventType = 1 // granted (re-entry is not an event)
	EventReleased    EventType = 2 // ended by Unlock or Release
	EventExpired     EventType = 3 // its TTL ran out
	EventPreempted   EventType = 4 // a higher-priority waiter took it
	EventForced      EventType = 5 // ended by ForceUnlock
	EventSessionLost EventType = 6 // its network session ended
	EventClosed      EventType = 7 // the broker closed
	EventLagged      EventType = 8 // the watcher fell behind: Missed events were dropped
)

var eventNames = [...]string{"", "acquired", "released", "expired", "preempted", "forced", "session-lost", "closed", "lagged"}

func (t EventType) String() string {
	if int(t) < len(eventNames) && t > 0 {
		return eventNames[t]
	}
	return "unknown"
}

// An Event is something that happened to a lease of a watched key.
type Event struct {
	Type   EventType
	Key    string
	ID     ulid.ULID // the lease's lock id
	Token  uint64
	Owner  string
	Time   time.Time // when it happened, to the millisecond
	Missed uint64    // for EventLagged: how many events were dropped
}

// eventType maps the reason a lease ended to its event type.
func eventType(reason error) EventType {
	if reason == ErrReleased { // the commonest, at the cost of one comparison
		return EventReleased
	}
	switch reasonCode(reason) {
	case reasonReleased:
		return EventReleased
	case reasonExpired:
		return EventExpired
	case reasonPreempted:
		return EventPreempted
	case reasonForced:
		return EventForced
	case reasonClosed:
		return EventClosed
	}
	return EventSessionLost
}

// DefaultWatchBuffer is how many events a watcher may have undelivered
// before it lags: further events are dropped and counted, and delivered as
// one EventLagged when there is room again.
const DefaultWatchBuffer = 256

// A watcher receives the events of keys under its prefix. Its sink must
// not block: events are emitted under a shard's mu.
type watcher struct {
	prefix string
	sink   func(*Event) bool // false: no room, the event is dropped
	done   func()            // ends the watch
	end    func()            // a client's: closes its channel, once
	mu     sync.Mutex        // orders events from different shards; after the shard's mu
	missed uint64            // guarded by mu
	closed bool              // guarded by mu
}

// send delivers ev, or counts it as missed; a lag is reported before the
// next event that fits.
func (w *watcher) send(ev *Event) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return
	}
	if w.missed > 0 {
		lag := Event{Type: EventLagged, Time: ev.Time, Missed: w.missed}
		if !w.sink(&lag) {
			w.missed++
			return
		}
		w.missed = 0
	}
	if !w.sink(ev) {
		w.missed++
	}
}

// stop ends w: after it returns, its sink is never called again.
func (w *watcher) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closed = true
}

// watchers is a broker's set of watchers, copied on write so that emitting
// takes no lock when nobody watches.
type watchers struct {
	mu   sync.Mutex
	list atomic.Pointer[[]*watcher] // written under mu
}

func (ws *watchers) add(w *watcher) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	var list []*watcher
	if p := ws.list.Load(); p != nil {
		list = append(list, *p...)
	}
	list = append(list, w)
	ws.list.Store(&list)
}

// remove takes w out and stops it, and reports whether w was in.
func (ws *watchers) remove(w *watcher) bool {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	p := ws.list.Load()
	if p == nil {
		return false
	}
	list := make([]*watcher, 0, len(*p))
	for _, x := range *p {
		if x != w {
			list = append(list, x)
		}
	}
	if len(list) == len(*p) {
		return false
	}
	if len(list) == 0 {
		ws.list.Store(nil)
	} else {
		ws.list.Store(&list)
	}
	w.stop()
	return true
}

// all returns the watchers.
func (ws *watchers) all() []*watcher {
	if p := ws.list.Load(); p != nil {
		return *p
	}
	return nil
}

// emitLocked tells the watchers of l's key what happened to it; the caller
// holds the shard's mu, so a key's events come in order.
func (sh *shard) emitLocked(t EventType, l *Lease) {
	p := sh.b.watchers.list.Load()
	if p == nil {
		return
	}
	var ev *Event
	for _, w := range *p {
		if !strings.HasPrefix(l.key, w.prefix) {
			continue
		}
		if ev == nil {
			ev = &Event{Type: t, Key: l.key, ID: l.id, Token: l.token, Owner: l.owner(), Time: time.UnixMilli(sh.now(l))}
		}
		w.send(ev)
	}
}

// Watch streams the events of the keys that start with prefix ("" for all)
// until ctx ends or the broker closes; then the channel is closed. A watcher
// never slows the table: when it falls DefaultWatchBuffer events behind,
// further events are dropped and it receives one EventLagged, counting them,
// once it catches up.
func (b *Broker) Watch(ctx context.Context, prefix string) (<-chan Event, error) {
	if b.closed.Load() {
		return nil, ErrClosed
	}
	ch := make(chan Event, DefaultWatchBuffer)
	w := &watcher{prefix: prefix, sink: chanSink(ch)}
	stop := context.AfterFunc(ctx, func() { b.unwatch(w) })
	w.done = func() {
		stop()
		close(ch)
	}
	b.watchers.add(w)
	if b.closed.Load() { // Close may have run before add
		b.unwatch(w)
	}
	return ch, nil
}

// unwatch ends w, once, whoever calls it first.
func (b *Broker) unwatch(w *watcher) {
	if b.watchers.remove(w) {
		w.done()
	}
}

// chanSink delivers events to ch without blocking.
func chanSink(ch chan Event) func(*Event) bool {
	return func(ev *Event) bool {
		select {
		case ch <- *ev:
			return true
		default:
			return false
		}
	}
}
