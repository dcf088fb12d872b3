package lmx

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"time"
)

// LockAll locks every key in keys and returns one lease for all of them:
// the caller gets all the keys or none. Keys are locked in one canonical
// order (sorted, duplicates dropped), so callers whose key sets overlap
// never deadlock on each other. opts apply to every key.
//
// The lease's Key, ID and Token are those of its first key; Parts lists the
// lease of each key, with its own fencing token. Unlock and Extend act on
// every key. If one key's lease ends without the holder asking (expiry,
// preemption, ForceUnlock, a lost session), the whole lease ends with that
// reason and the other keys are released. If a key taken is lost while
// LockAll waits for the next, LockAll fails at once with an error matching
// ErrLeaseLost and that reason, and gives back the keys it took.
func (b *Broker) LockAll(ctx context.Context, keys []string, opts ...LockOption) (*Lease, error) {
	return LockAll(ctx, b, keys, opts...)
}

// TryLockAll is LockAll that never waits: if a key cannot be granted at
// once, it releases those it took and fails with ErrLocked.
func (b *Broker) TryLockAll(ctx context.Context, keys []string, opts ...LockOption) (*Lease, error) {
	return TryLockAll(ctx, b, keys, opts...)
}

// LockAll locks every key in keys and returns one lease for them all; see
// Broker.LockAll.
func (c *Client) LockAll(ctx context.Context, keys []string, opts ...LockOption) (*Lease, error) {
	return LockAll(ctx, c, keys, opts...)
}

// TryLockAll is LockAll that never waits; see Broker.TryLockAll.
func (c *Client) TryLockAll(ctx context.Context, keys []string, opts ...LockOption) (*Lease, error) {
	return TryLockAll(ctx, c, keys, opts...)
}

// LockAll is Broker.LockAll on any Locker: it locks keys one by one in the
// canonical order through d and joins their leases into one. A backend's
// Locker offers LockAll and TryLockAll through it, with the broker's
// semantics, as long as its leases end (Done) when they are lost.
func LockAll(ctx context.Context, d Locker, keys []string, opts ...LockOption) (*Lease, error) {
	return lockAll(ctx, d, keys, opts, true)
}

// TryLockAll is LockAll that never waits; see Broker.TryLockAll.
func TryLockAll(ctx context.Context, d Locker, keys []string, opts ...LockOption) (*Lease, error) {
	return lockAll(ctx, d, keys, opts, false)
}

// Parts returns the lease of each key of a LockAll lease, in key order, or,
// for a lease of one key, the lease itself.
func (l *Lease) Parts() []*Lease {
	if m, ok := l.door.door.(*multi); ok {
		return slices.Clone(m.parts)
	}
	return []*Lease{l}
}

func lockAll(ctx context.Context, d Locker, keys []string, opts []LockOption, wait bool) (*Lease, error) {
	if len(keys) == 0 {
		return nil, fmt.Errorf("%w: LockAll of no keys", ErrInvalidKey)
	}
	lock := d.TryLock
	if wait {
		lock = d.Lock
	}
	start := goStart
	if g, ok := d.(interface{ start(func()) bool }); ok {
		start = g.start
	}
	return takeAll(ctx, canonicalKeys(keys), func(ctx context.Context, key string) (*Lease, error) {
		return lock(ctx, key, opts...)
	}, start)
}

// goStart runs f in a goroutine of its own.
func goStart(f func()) bool {
	go f()
	return true
}

// canonicalKeys returns keys in the order every multi-key lock takes them:
// sorted, without duplicates, in a fresh slice.
func canonicalKeys(keys []string) []string {
	keys = slices.Clone(keys)
	slices.Sort(keys)
	return slices.Compact(keys)
}

// takeAll holds the rules of every multi-key lock, LockAll and live-mutex's
// acquire-many alike. It takes keys, in canonical order, one at a time
// through take, and joins their leases into one:
//
//   - all or nothing: if a key cannot be had, the keys taken are given back
//     and take's error returned;
//   - a key lost (expired, forced...) while the others are taken fails the
//     whole at once, with an error wrapping the loss, and gives back the rest;
//   - once all are held, a key lost ends the whole lease with that reason and
//     the other keys are released (see multi).
//
// A lease of one key is returned as it is. Past the first key, one goroutine,
// run by start, watches the keys until the lease ends.
func takeAll(ctx context.Context, keys []string, take func(ctx context.Context, key string) (*Lease, error), start func(func()) bool) (*Lease, error) {
	ctx, fail := context.WithCancel(ctx)
	defer fail()
	m := &multi{stop: make(chan struct{}), added: make(chan struct{}, 1), fail: fail}
	m.ref.door = m
	giveBack := func(err error) (*Lease, error) {
		m.mu.Lock()
		m.finishLocked()
		parts, lost := m.parts, m.lost
		m.mu.Unlock()
		for _, p := range parts {
			p.Unlock(context.WithoutCancel(ctx))
		}
		if lost != nil {
			err = lost // that, not the cancel it caused, is why
		}
		return nil, err
	}
	for i, k := range keys {
		if i == 1 && !start(m.watch) {
			return giveBack(ErrClosed)
		}
		if err := ctx.Err(); err != nil {
			return giveBack(err)
		}
		p, err := take(ctx, k)
		if err != nil {
			return giveBack(err)
		}
		if len(keys) == 1 {
			return p, nil
		}
		m.mu.Lock()
		m.parts = append(m.parts, p)
		m.mu.Unlock()
		select {
		case m.added <- struct{}{}:
		default: // the watcher has yet to look at the last
		}
	}
	parts := m.parts
	l := &Lease{key: parts[0].key, id: parts[0].id, token: parts[0].token, door: &m.ref}
	if exp := m.expires(); !exp.IsZero() {
		l.setExpires(exp)
	}
	m.mu.Lock()
	if m.ended { // a key was lost just now
		m.mu.Unlock()
		return giveBack(nil)
	}
	m.lease = l
	m.mu.Unlock()
	return l, nil
}

// expires returns the earliest expiry of the parts, or zero if none expires.
func (m *multi) expires() time.Time {
	var first time.Time
	for _, p := range m.parts {
		if exp := p.Expires(); !exp.IsZero() && (first.IsZero() || exp.Before(first)) {
			first = exp
		}
	}
	return first
}

// multi is the door of a multi-key lease: it acts on every part.
type multi struct {
	ref   doorRef            // the lease's door: m
	stop  chan struct{}      // closed when the lease ends, or its take fails
	added chan struct{}      // tells the watcher that parts grew
	fail  context.CancelFunc // fails the take

	mu    sync.Mutex
	parts []*Lease // in key order; appended while taking, then fixed; guarded by mu
	lease *Lease   // set once every key is held; guarded by mu
	lost  error    // why the take failed, if a key was lost; guarded by mu
	ended bool     // guarded by mu
}

// watch waits for a part to end, or for the lease to end.
func (m *multi) watch() {
	cases := []reflect.SelectCase{
		{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(m.stop)},
		{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(m.added)},
	}
	for {
		m.mu.Lock()
		parts := m.parts
		m.mu.Unlock()
		cases = cases[:2]
		for _, p := range parts {
			cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(p.Done())})
		}
		switch i, _, _ := reflect.Select(cases); i {
		case 0:
			return
		case 1:
			continue
		default:
			if m.lose(parts[i-2]) {
				for _, p := range parts {
					p.Unlock(context.Background())
				}
			}
			return
		}
	}
}

// lose ends m for the loss of part p, once: it fails the take if the keys
// are still being taken, else ends the lease, and then reports true: the
// caller releases the other parts.
func (m *multi) lose(p *Lease) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.finishLocked() {
		return false
	}
	if m.lease == nil {
		m.lost = fmt.Errorf("lmx: key %q was lost before all keys were held: %w", p.key, p.Err())
		m.fail()
		return false
	}
	m.lease.end(p.Err())
	return true
}

// finishLocked marks m ended and stops its watcher, once, and reports
// whether it did.
func (m *multi) finishLocked() bool {
	if m.ended {
		return false
	}
	m.ended = true
	close(m.stop)
	return true
}

// disband ends l, a lease of takeAll, for reason, and returns its parts,
// left to live on each alone: none of them ends the others any more.
func disband(l *Lease, reason error) []*Lease {
	m, ok := l.door.door.(*multi)
	if !ok {
		return []*Lease{l}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.finishLocked() {
		l.end(reason)
	}
	return m.parts
}

func (m *multi) unlock(ctx context.Context, l *Lease) error {
	m.mu.Lock()
	if !m.finishLocked() {
		m.mu.Unlock()
		return l.notHeld()
	}
	l.end(ErrReleased)
	m.mu.Unlock()
	var errs []error
	for _, p := range m.parts {
		if err := p.Unlock(ctx); err != nil && !errors.Is(err, ErrNotHeld) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (m *multi) extend(ctx context.Context, l *Lease, ttl time.Duration) error {
	if l.Err() != nil {
		return l.notHeld()
	}
	var errs []error
	for _, p := range m.parts {
		if err := p.Extend(ctx, ttl); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	l.setExpires(m.expires())
	return nil
}
