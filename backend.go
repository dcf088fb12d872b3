package lmx

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/oklog/ulid/v2"
)

// This file is the hook for backends that live outside package lmx (etcd,
// ...): they cannot fill a Lease's unexported fields, so NewLease makes one
// for them, and ParseLockOptions reads the options a request was made with.
// The in-process broker and the network client do not use it.

// A LeaseBackend is where the Unlock and Extend of a lease made by NewLease
// go. Its methods are called only while the lease is held (Err is nil), and
// may be called concurrently.
type LeaseBackend interface {
	// Unlock releases the lease's key. It must release even when ctx is
	// done (best-effort remotely, with the backend's session as the
	// backstop). When it returns nil, or ctx.Err() with ctx done, the lease
	// ends with ErrReleased; any other error leaves the lease as it is,
	// unless the backend ended it with NewLease's end function.
	Unlock(ctx context.Context, l *Lease) error

	// Extend makes the lease expire ttl (> 0) from now and returns the new
	// expiry, which Lease.Expires then reports. An error changes nothing.
	Extend(ctx context.Context, l *Lease, ttl time.Duration) (time.Time, error)
}

// NewLease makes a held lease of key for a backend: its lock id, fencing
// token and expiry (zero for none) are the backend's, and its Unlock and
// Extend go to b. It returns the lease and end, which ends it with reason:
// ErrReleased (or an error matching it) is kept as it is; any other reason
// is wrapped so that Err matches both ErrLeaseLost and reason (a reason that
// already matches ErrLeaseLost is kept as it is). end closes Done; only its
// first call counts, and it reports whether it was that call. It is safe
// for concurrent use, and with the lease's own methods.
func NewLease(key string, id ulid.ULID, token uint64, expires time.Time, b LeaseBackend) (l *Lease, end func(reason error) bool) {
	d := &backendDoor{b: b}
	d.ref.door = d
	l = &Lease{key: key, id: id, token: token, door: &d.ref, count: 1, state: stateHeld}
	if !expires.IsZero() {
		l.ttl.Store(&ttlState{expires: nanos(expires)})
	}
	d.l = l
	return l, d.end
}

// backendDoor is the door of a lease made by NewLease.
type backendDoor struct {
	ref doorRef // the lease's door: d
	b   LeaseBackend
	l   *Lease

	mu        sync.Mutex
	ended     bool          // guarded by mu; set by the first end
	renew     *time.Timer   // KeepAlive's, or nil; guarded by mu
	ttl       time.Duration // KeepAlive's renewal; guarded by mu
	keepUntil time.Time     // KeepAlive's bound; guarded by mu
}

// KeepAliveLease renews l, a lease made by NewLease whose TTL is ttl, as the
// KeepAlive option promises: it extends l by ttl through the backend's
// Extend every third of ttl (after a failed Extend, every sixth), never
// past max from now, and stops when l ends. A backend calls it once, when
// it grants a request with KeepAlive(max); ParseLockOptions has checked
// that such a request has a TTL. It panics for a lease NewLease did not
// make.
func KeepAliveLease(l *Lease, ttl, max time.Duration) {
	d := l.door.door.(*backendDoor)
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ended || d.renew != nil {
		return
	}
	d.ttl, d.keepUntil = ttl, time.Now().Add(max)
	d.renew = time.AfterFunc(ttl/3, d.keepAlive)
}

// RevokeLease asks the holder of l, a lease made by NewLease, to make way
// for a waiter asked with Preempt: it closes l.Revoked(), once. The rest of
// preemption is the backend's, as the broker does it: never for a lease
// asked with NoPreempt, and after the waiter's grace, ending l with
// NewLease's end(ErrPreempted) and granting the waiter a newer token. It
// panics for a lease NewLease did not make.
func RevokeLease(l *Lease) {
	_ = l.door.door.(*backendDoor)
	l.revokeNow()
}

// keepAlive is a KeepAliveLease renewal.
func (d *backendDoor) keepAlive() {
	d.mu.Lock()
	full := d.ttl
	ttl := min(full, time.Until(d.keepUntil))
	d.mu.Unlock()
	if ttl <= 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), full/3)
	err := d.l.Extend(ctx, ttl)
	cancel()
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case d.ended:
	case err != nil && !errors.Is(err, ErrNotHeld):
		d.renew.Reset(full / 6)
	case err == nil && ttl == full:
		d.renew.Reset(full / 3)
	}
}

// end ends the lease once; see NewLease.
func (d *backendDoor) end(reason error) bool {
	if reason == nil {
		reason = ErrReleased
	}
	if !errors.Is(reason, ErrReleased) && !errors.Is(reason, ErrLeaseLost) {
		reason = lost(reason)
	}
	// The lease ends under mu, so that a later end returns only once it
	// has ended: its caller may read why at once.
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ended {
		return false
	}
	d.ended = true
	if d.renew != nil {
		d.renew.Stop()
	}
	d.l.end(reason)
	return true
}

// unlock implements door.
func (d *backendDoor) unlock(ctx context.Context, l *Lease) error {
	if l.Err() != nil {
		return l.notHeld()
	}
	err := d.b.Unlock(ctx, l)
	switch {
	case err == nil:
		if !d.end(ErrReleased) {
			return l.notHeld() // the lease was lost while the release ran
		}
		return nil
	case ctx.Err() != nil && errors.Is(err, ctx.Err()):
		d.end(ErrReleased)
		return err
	case errors.Is(err, ErrNotHeld) && l.Err() != nil:
		return l.notHeld()
	}
	return err
}

// extend implements door.
func (d *backendDoor) extend(ctx context.Context, l *Lease, ttl time.Duration) error {
	if l.Err() != nil {
		return l.notHeld()
	}
	exp, err := d.b.Extend(ctx, l, ttl)
	if err != nil {
		if errors.Is(err, ErrNotHeld) && l.Err() != nil {
			return l.notHeld()
		}
		return err
	}
	l.setExpires(exp)
	return nil
}

// A LockRequest is a validated set of lock options, as a backend reads
// them with ParseLockOptions. Each field is documented by the option that
// sets it.
type LockRequest struct {
	TTL              time.Duration // 0: no TTL
	KeepAlive        time.Duration // 0: no KeepAlive
	Limit            int           // at least 1
	Priority         int
	Owner            string
	Shared           bool
	KeepOnDisconnect bool
	Preempt          time.Duration // the grace; < 0: no preemption asked
	NoPreempt        bool
	LockDelay        time.Duration // < 0: none asked, the door's default
}

// ParseLockOptions applies opts over the defaults and validates them as
// every door does: an invalid combination is an error matching
// ErrInvalidOption. A backend that cannot honour a valid option must fail
// the request with an error of its own, never ignore the option.
func ParseLockOptions(opts ...LockOption) (LockRequest, error) {
	r, err := parseOptions(opts)
	if err != nil {
		return LockRequest{}, err
	}
	return LockRequest{
		TTL:              r.ttl,
		KeepAlive:        r.keepAlive,
		Limit:            r.limit,
		Priority:         r.priority,
		Owner:            r.owner,
		Shared:           r.shared,
		KeepOnDisconnect: r.keepOnDisconnect,
		Preempt:          r.preempt,
		NoPreempt:        r.noPreempt,
		LockDelay:        r.lockDelay,
	}, nil
}
