package etcd

import (
	"context"
	"strings"
	"time"

	"github.com/lmx-go/lmx"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// recentSize is how many of the latest changes the dispatcher remembers, so
// that a waiter that subscribes after its predecessor changed still wakes.
const recentSize = 4096

// dispatcher runs a Locker's one watch on its prefix and hands each change
// to the waiters and holders of the changed key only.
type dispatcher struct {
	lk *Locker

	// Guarded by lk.mu.
	rev    int64                        // changes up to rev are dispatched
	floor  int64                        // changes up to floor may be forgotten
	subs   map[string]map[*sub]struct{} // waiters by the keys they wait on
	held   map[string]*lease            // granted keys of this Locker
	recent map[string]change            // the latest change of a key
	ring   [recentSize]struct {
		key string
		rev int64
	}
	next int
}

type change struct {
	rev     int64
	deleted bool
}

type sub struct {
	ch   chan struct{}
	keys []string
}

func newDispatcher(lk *Locker, rev int64) *dispatcher {
	return &dispatcher{
		lk: lk, rev: rev, floor: rev,
		subs: map[string]map[*sub]struct{}{}, held: map[string]*lease{}, recent: map[string]change{},
	}
}

// subscribe returns a channel that is closed when one of keys changes after
// revision rev, and a function that cancels the subscription.
func (d *dispatcher) subscribe(keys []string, rev int64) (<-chan struct{}, func()) {
	s := &sub{ch: make(chan struct{}), keys: keys}
	mu := &d.lk.mu
	mu.Lock()
	defer mu.Unlock()
	if d.floor > rev {
		close(s.ch) // what happened since rev is partly forgotten: look again
		return s.ch, func() {}
	}
	for _, k := range keys {
		if c, ok := d.recent[k]; ok && c.rev > rev {
			close(s.ch)
			return s.ch, func() {}
		}
	}
	for _, k := range keys {
		m := d.subs[k]
		if m == nil {
			m = map[*sub]struct{}{}
			d.subs[k] = m
		}
		m[s] = struct{}{}
	}
	return s.ch, func() {
		mu.Lock()
		defer mu.Unlock()
		d.unsubscribe(s)
	}
}

// unsubscribe removes s; the caller holds lk.mu.
func (d *dispatcher) unsubscribe(s *sub) {
	for _, k := range s.keys {
		if m := d.subs[k]; m != nil {
			delete(m, s)
			if len(m) == 0 {
				delete(d.subs, k)
			}
		}
	}
}

// hold watches a key granted at revision rev for a deletion that is not its
// holder's; it reports false when the key is gone already.
func (d *dispatcher) hold(key string, rev int64, l *lease) bool {
	d.lk.mu.Lock()
	defer d.lk.mu.Unlock()
	if c, ok := d.recent[key]; ok && c.rev > rev && c.deleted {
		return false
	}
	d.held[key] = l
	return true
}

// revision returns the revision up to which changes are dispatched.
func (d *dispatcher) revision() int64 {
	d.lk.mu.Lock()
	defer d.lk.mu.Unlock()
	return d.rev
}

// release stops watching a held key.
func (d *dispatcher) release(key string) {
	d.lk.mu.Lock()
	delete(d.held, key)
	d.lk.mu.Unlock()
}

// run watches until the Locker closes, starting again after a compaction
// or an error.
func (d *dispatcher) run() {
	ctx := d.lk.ctx
	for ctx.Err() == nil {
		d.lk.mu.Lock()
		from := d.rev + 1
		d.lk.mu.Unlock()
		wch := d.lk.cli.Watch(clientv3.WithRequireLeader(ctx), d.lk.pfx, clientv3.WithPrefix(), clientv3.WithRev(from))
		for resp := range wch {
			if err := resp.Err(); err != nil {
				d.restart(resp.CompactRevision)
				break
			}
			d.dispatch(resp.Events, resp.Header.Revision)
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// dispatch wakes the waiters and ends the holders that events concern.
func (d *dispatcher) dispatch(events []*clientv3.Event, rev int64) {
	var lost []*lease
	d.lk.mu.Lock()
	for _, ev := range events {
		k := string(ev.Kv.Key)
		del := ev.Type == mvccpb.DELETE
		r := ev.Kv.ModRevision
		d.remember(k, change{rev: r, deleted: del})
		for s := range d.subs[k] {
			close(s.ch)
			d.unsubscribe(s)
		}
		l := d.held[k]
		if l == nil {
			continue
		}
		if !del {
			if _, why, ok := strings.Cut(string(ev.Kv.Value), "/"); ok {
				l.why.Store(why) // what the deletion to come means
			}
			continue
		}
		delete(d.held, k)
		lost = append(lost, l)
	}
	d.rev = max(d.rev, rev)
	d.lk.mu.Unlock()
	for _, l := range lost {
		switch l.why.Load() {
		case whyReleased:
			l.lost(lmx.ErrReleased)
		case whyForced:
			l.lost(lmx.ErrForced)
		default:
			l.lost(lmx.ErrSessionLost)
		}
	}
}

// remember records a change; the caller holds lk.mu.
func (d *dispatcher) remember(key string, c change) {
	slot := &d.ring[d.next]
	d.next = (d.next + 1) % recentSize
	if slot.key != "" {
		if old, ok := d.recent[slot.key]; ok && old.rev == slot.rev {
			delete(d.recent, slot.key)
		}
		d.floor = max(d.floor, slot.rev)
	}
	slot.key, slot.rev = key, c.rev
	d.recent[key] = c
}

// restart follows a watch that failed (compacted past): everything since
// the last dispatched revision is forgotten, so every waiter looks again and
// every held key is checked.
func (d *dispatcher) restart(compact int64) {
	ctx, cancel := context.WithTimeout(d.lk.ctx, 5*time.Second)
	defer cancel()
	resp, err := d.lk.cli.Get(ctx, d.lk.pfx+"\x00", clientv3.WithCountOnly())
	if err != nil {
		return
	}
	d.lk.mu.Lock()
	d.rev, d.floor = max(resp.Header.Revision, compact), max(resp.Header.Revision, compact)
	for _, m := range d.subs {
		for s := range m {
			close(s.ch)
			d.unsubscribe(s)
		}
	}
	held := make(map[string]*lease, len(d.held))
	for k, l := range d.held {
		held[k] = l
	}
	d.lk.mu.Unlock()
	for k, l := range held {
		r, err := d.lk.cli.Get(ctx, k, clientv3.WithCountOnly())
		if err == nil && r.Count == 0 {
			d.release(k)
			l.lost(lmx.ErrSessionLost)
		}
	}
}
