package lmx

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/oklog/ulid/v2"
)

// A Lease is one grant of a key: what Lock and TryLock return. Its methods
// are safe for concurrent use.
//
// A lease ends exactly once: by Unlock (or Release by its id), or by a loss
// the holder did not ask for (TTL expiry, a lost session, ForceUnlock,
// preemption, the broker's Close). Done and Err report it.
type Lease struct {
	key   string
	id    ulid.ULID
	token uint64
	door  *doorRef // where Unlock and Extend go

	// Broker state, guarded by the shard's mu (see shard). A lease is 112
	// bytes: what only some leases need is in x or ttl, so that a million
	// held locks do not pay for it.
	e         *entry // the key's entry while waiting or held with one, else nil
	prev      *Lease // neighbours in e.waiters or e.holders
	next      *Lease
	state     leaseState
	shared    bool
	keep      bool          // KeepOnDisconnect
	noPreempt bool          // NoPreempt
	count     int32         // grants held by the owner (re-entrancy); a client's, guarded by its conn's mu
	x         *leaseExtra   // what few leases need; nil for most
	ready     chan struct{} // an in-process waiter's wake-up; sent once on grant or failure

	// ttl is nil for a lease that never had an expiry; once set, it stays.
	// Expires reads it with no other lock; for a broker's lease it is
	// written holding the shard's mu.
	ttl atomic.Pointer[ttlState]

	sig atomic.Pointer[leaseSignals]
}

// leaseSignals is what a lease tells its holder: Done, Revoked and Err;
// l.sig is nil until one is asked for or the lease ends. A leaseSignals is
// never written once l.sig points at it: each change swaps in a new one
// (compare-and-swap), so that neither reading them nor ending a lease takes
// a lock. A lease nobody asked Done or Revoked of ends with one of
// sharedEnds, so that its end allocates nothing.
type leaseSignals struct {
	done    chan struct{} // made by Done, or closedChan once ended
	revoke  chan struct{} // made by Revoked, or closedChan once revoked
	revoked bool          // revoke is closed
	err     error         // why the lease ended, or why a wait failed
}

// sharedEnds are the ends of the leases nobody asked Done or Revoked of,
// one for each of the table's reasons.
var sharedEnds = func() []*leaseSignals {
	var ends []*leaseSignals
	for _, err := range []error{ErrReleased, errExpired, errForced, errClosed, errSessionLost, errPreempted, ErrClosed} {
		ends = append(ends, &leaseSignals{done: closedChan, err: err})
	}
	return ends
}()

// with returns a copy of s, or new signals when s is nil, for a change.
func (s *leaseSignals) with() *leaseSignals {
	if s == nil {
		return new(leaseSignals)
	}
	c := *s
	return &c
}

// leaseExtra holds what only some of a broker's leases need, so that the
// others do not pay for it. Guarded by the shard's mu.
type leaseExtra struct {
	hook      leaseHook     // told of grant and end: a network session's lease
	owner     string        // asked with Owner
	preempt   *preemption   // a waiter asked with Preempt
	lockDelay time.Duration // asked with LockDelay, else -1 (none asked)

	// at is, in unix milliseconds, when a named waiter queued (its token
	// field holds its token already), then when the lease it was named for
	// was granted (its id has the time it was named); else 0.
	at       int64
	reqID    uint32 // the network request a waiter answers
	bypassed int32  // a waiter's count of later requests granted first
	prio     int32  // asked with Priority
	named    bool   // a waiter named to its session (see chain.go)
}

// hook returns the leaseHook l was asked with, or nil in-process.
func (l *Lease) hook() leaseHook {
	if l.x == nil {
		return nil
	}
	return l.x.hook
}

// owner returns who asked for the lease, or "".
func (l *Lease) owner() string {
	if l.x == nil {
		return ""
	}
	return l.x.owner
}

// prio returns the priority l was asked with.
func (l *Lease) prio() int32 {
	if l.x == nil {
		return 0
	}
	return l.x.prio
}

// isNamed reports whether the waiter l is named to its session.
func (l *Lease) isNamed() bool { return l.x != nil && l.x.named }

// queued returns when the waiter l queued, in unix milliseconds.
func (l *Lease) queued() int64 {
	if l.isNamed() {
		return l.x.at
	}
	return int64(l.token) // a waiter's token is not set yet
}

// granted returns when the held lease l was granted, in unix milliseconds.
func (l *Lease) granted() int64 {
	if l.x != nil && l.x.at != 0 {
		return l.x.at
	}
	return int64(l.id.Time())
}

// extra returns l's leaseExtra, making it if need be.
func (l *Lease) extra() *leaseExtra {
	if l.x == nil {
		l.x = &leaseExtra{lockDelay: -1}
	}
	return l.x
}

type leaseState uint8

const (
	stateNew leaseState = iota
	stateWaiting
	stateHeld
	stateEnded
)

// door is where a lease's Unlock and Extend go: the shard of an in-process
// broker, or a network client.
type door interface {
	unlock(ctx context.Context, l *Lease) error
	extend(ctx context.Context, l *Lease, ttl time.Duration) error
}

// A doorRef is a door as its leases see it: each door keeps one, holding
// itself, so that a lease points at its door with one word, not the two of
// an interface, which keeps a lease at 112 bytes.
type doorRef struct{ door door }

// Key returns the locked key.
func (l *Lease) Key() string { return l.key }

// ID returns the lock id: Release(ctx, key, id) ends this lease from any
// process, and no other grant ever has the same id.
func (l *Lease) ID() ulid.ULID { return l.id }

// ParseID reads a lock id as Lease.ID().String() writes it (26 characters of
// Crockford base32, either case), so that a caller can Release by an id it
// was given as text without importing the ULID package. Anything else is
// ErrInvalidID.
func ParseID(s string) (ulid.ULID, error) {
	id, err := ulid.ParseStrict(s)
	if err != nil {
		return ulid.ULID{}, fmt.Errorf("%w: %q (a lock id is 26 characters of Crockford base32, such as 01KBVZ3W5R8Q2M0XJ4T6N7PAYC)", ErrInvalidID, s)
	}
	return id, nil
}

// Token returns the fencing token. Tokens come from one broker-wide counter
// seeded from the wall clock at broker start, so the tokens of a key strictly
// increase in grant order, across broker restarts too. Pass the token to the
// resource the lock protects and let it refuse older ones (see Fence).
func (l *Lease) Token() uint64 { return l.token }

// Expires returns when the lease's TTL runs out, or the zero time when it has
// no TTL. Extend and KeepAlive move it.
func (l *Lease) Expires() time.Time {
	t := l.ttl.Load()
	if t == nil {
		return time.Time{}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.expiry(time.Now())
}

// Done returns a channel that is closed when the lease ends, for any reason.
func (l *Lease) Done() <-chan struct{} {
	for {
		old := l.sig.Load()
		if old != nil && old.done != nil {
			return old.done
		}
		s := old.with()
		s.done = make(chan struct{})
		if l.sig.CompareAndSwap(old, s) {
			return s.done
		}
	}
}

// Revoked returns a channel that is closed when a higher-priority waiter
// asked with Preempt wants the key: the holder should finish and Unlock
// within the waiter's grace period, or the broker ends the lease with
// ErrPreempted. It is never closed for a lease asked with NoPreempt.
func (l *Lease) Revoked() <-chan struct{} {
	for {
		old := l.sig.Load()
		if old != nil && old.revoke != nil {
			return old.revoke
		}
		s := old.with()
		s.revoke = make(chan struct{})
		if l.sig.CompareAndSwap(old, s) {
			return s.revoke
		}
	}
}

// revokeNow closes Revoked's channel, once.
func (l *Lease) revokeNow() {
	for {
		old := l.sig.Load()
		if old != nil && old.revoked {
			return
		}
		s := old.with()
		s.revoked = true
		if s.revoke == nil {
			s.revoke = closedChan
		}
		if l.sig.CompareAndSwap(old, s) {
			if s.revoke != closedChan {
				close(s.revoke)
			}
			return
		}
	}
}

// Err returns nil while the lease is held, and then why it ended: ErrReleased
// after Unlock or Release, or an error matching ErrLeaseLost and its reason
// (ErrExpired, ErrPreempted, ErrSessionLost, ErrForced, ErrClosed).
func (l *Lease) Err() error {
	if s := l.sig.Load(); s != nil {
		return s.err
	}
	return nil
}

// Unlock gives the lease up, and the key passes to the next waiter. For a
// re-entered lease (Owner) it undoes one grant; the key is released when all
// are undone. Unlock of a lease that is not held fails with ErrNotHeld and
// changes nothing. Unlock does not rely on ctx to release: an in-process
// lease is released at once, a remote one as soon as the broker hears of it
// or, failing that, when the session ends. Once Unlock has returned nil, Err
// reports ErrReleased, whatever happens to the session after.
func (l *Lease) Unlock(ctx context.Context) error { return l.door.door.unlock(ctx, l) }

// Extend makes the lease expire ttl from now, whether or not it had a TTL
// before, and whether that is later or sooner. ttl must be positive (else
// ErrInvalidOption). Extending a lease that is not held fails with
// ErrNotHeld: an expired lease is never revived.
func (l *Lease) Extend(ctx context.Context, ttl time.Duration) error {
	if err := checkExtendTTL(ttl); err != nil {
		return err
	}
	return l.door.door.extend(ctx, l, ttl)
}

// end records why the lease ended and closes Done.
func (l *Lease) end(reason error) {
	for {
		old := l.sig.Load()
		s := sharedEnd(old, reason)
		if s == nil {
			s = old.with()
			s.err = reason
			if s.done == nil {
				s.done = closedChan
			}
		}
		if l.sig.CompareAndSwap(old, s) {
			if old != nil && old.done != nil {
				close(old.done)
			}
			return
		}
	}
}

// sharedEnd returns the shared end for reason of a lease whose signals
// are old, or nil if it needs one of its own.
func sharedEnd(old *leaseSignals, reason error) *leaseSignals {
	if old != nil {
		return nil
	}
	for _, s := range sharedEnds {
		if s.err == reason {
			return s
		}
	}
	return nil
}

// setExpires moves the expiry, giving the lease a ttlState if it had none;
// for a broker's lease, the caller holds the shard's mu.
func (l *Lease) setExpires(t time.Time) { l.setExpiresAt(nanos(t)) }

// setExpiresAt is setExpires of a time in nanoseconds since epoch.
func (l *Lease) setExpiresAt(n int64) {
	t := l.ttlState()
	t.mu.Lock()
	t.expires = n
	t.mu.Unlock()
}

// ttlState returns l's ttlState, making it if need be.
func (l *Lease) ttlState() *ttlState {
	if t := l.ttl.Load(); t != nil {
		return t
	}
	l.ttl.CompareAndSwap(nil, new(ttlState))
	return l.ttl.Load()
}

// expiresLocked returns the expiry of a broker's lease; the caller holds
// the shard's mu.
func (l *Lease) expiresLocked() time.Time {
	t := l.ttl.Load()
	if t == nil {
		return time.Time{}
	}
	return timeAt(t.expires)
}

// notHeld is the error for a lease that is not held: ErrNotHeld, wrapped with
// why the lease ended.
func (l *Lease) notHeld() error {
	if err := l.Err(); err != nil {
		return fmt.Errorf("%w: %w", ErrNotHeld, err)
	}
	return ErrNotHeld
}

var closedChan = make(chan struct{})

func init() { close(closedChan) }
