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
// reason and the other keys are released.
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
	if m, ok := l.door.(*multi); ok {
		return slices.Clone(m.parts)
	}
	return []*Lease{l}
}

func lockAll(ctx context.Context, d Locker, keys []string, opts []LockOption, wait bool) (*Lease, error) {
	if len(keys) == 0 {
		return nil, fmt.Errorf("%w: LockAll of no keys", ErrInvalidKey)
	}
	keys = canonicalKeys(keys)
	parts := make([]*Lease, 0, len(keys))
	for _, k := range keys {
		var p *Lease
		var err error
		if wait {
			p, err = d.Lock(ctx, k, opts...)
		} else {
			p, err = d.TryLock(ctx, k, opts...)
		}
		if err != nil {
			for _, p := range parts {
				p.Unlock(context.WithoutCancel(ctx))
			}
			return nil, err
		}
		parts = append(parts, p)
	}
	if len(parts) == 1 {
		return parts[0], nil
	}
	m := &multi{parts: parts, stop: make(chan struct{})}
	l := &Lease{key: parts[0].key, id: parts[0].id, token: parts[0].token, door: m}
	m.lease = l
	if exp := m.expires(); !exp.IsZero() {
		l.setExpires(exp)
	}
	go m.watch()
	return l, nil
}

// canonicalKeys returns keys in the order every multi-key lock takes them:
// sorted, without duplicates, in a fresh slice.
func canonicalKeys(keys []string) []string {
	keys = slices.Clone(keys)
	slices.Sort(keys)
	return slices.Compact(keys)
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

// multi is the door of a LockAll lease: it acts on every part.
type multi struct {
	lease *Lease
	parts []*Lease
	stop  chan struct{} // closed when the lease ends

	mu    sync.Mutex
	ended bool // guarded by mu
}

// watch waits for a part to end, or for the lease to end.
func (m *multi) watch() {
	cases := make([]reflect.SelectCase, 0, len(m.parts)+1)
	cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(m.stop)})
	for _, p := range m.parts {
		cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(p.Done())})
	}
	i, _, _ := reflect.Select(cases)
	if i == 0 {
		return
	}
	// A part ended without the holder asking: the lease is lost with it.
	if m.end(m.parts[i-1].Err()) {
		for _, p := range m.parts {
			p.Unlock(context.Background())
		}
	}
}

// end ends the lease for reason, once, and reports whether it did.
func (m *multi) end(reason error) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ended {
		return false
	}
	m.ended = true
	close(m.stop)
	m.lease.end(reason)
	return true
}

func (m *multi) unlock(ctx context.Context, l *Lease) error {
	if !m.end(ErrReleased) {
		return l.notHeld()
	}
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
