package lmx

import (
	"context"
	"errors"
	"time"

	"github.com/oklog/ulid/v2"
)

// A remote lease's door: Unlock and Extend of a Client's leases, and the
// bookkeeping of their grants.

// unlocked records that one grant of the lease with lock id id was
// released; when none is left, the lease leaves the conn and ends.
func (cc *clientConn) unlocked(id ulid.ULID) {
	cc.mu.Lock()
	l := cc.unlockedLocked(id)
	cc.mu.Unlock()
	if l != nil {
		l.end(ErrReleased)
	}
}

// unlockedLocked records that one grant of the lease with lock id id was
// released. When none is left, it takes the lease out of the conn and
// returns it, for the caller to end with ErrReleased.
func (cc *clientConn) unlockedLocked(id ulid.ULID) *Lease {
	l := cc.leases[id]
	if l == nil {
		return nil
	}
	if l.count--; l.count > 0 {
		return nil
	}
	delete(cc.leases, id)
	return l
}

// releaseAsync asks the broker to release one grant of l without waiting for
// the answer. The read role's holder passes aside, for it must not write
// (see flushAside).
func (cc *clientConn) releaseAsync(l *Lease, aside bool) {
	cc.mu.Lock()
	if cc.out.add(func(b []byte) []byte { return appendRelease(b, 0, l.key, l.id) }) {
		cc.handOffLocked(l)
	}
	cc.mu.Unlock()
	if aside {
		cc.flushAside()
	} else {
		cc.out.flush()
	}
	cc.unlocked(l.id)
}

// unlock implements door for a client's leases.
func (cc *clientConn) unlock(ctx context.Context, l *Lease) error {
	if l.Err() != nil {
		return l.notHeld()
	}
	if ctx.Err() != nil {
		// Release anyway, without waiting: if the frame is lost with the
		// session, the broker releases the lease with the session.
		cc.releaseAsync(l, false)
		return ctx.Err()
	}
	// The broker's OK ends the lease (see call.frees) before roundTrip
	// returns, and before a loss of the session could end it otherwise.
	// Cut short by ctx, the Release is on its way: its OK, if the session
	// lives to read it, ends the lease then.
	_, err := cc.roundTrip(ctx, call{key: l.key, release: l, frees: l.id}, func(b []byte, id uint32) []byte {
		return appendRelease(b, id, l.key, l.id)
	})
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return ctx.Err()
	case errors.Is(err, ErrNotHeld) && l.Err() != nil:
		return l.notHeld() // the Ended frame came first and says why
	}
	return err
}

// extend implements door for a client's leases.
func (cc *clientConn) extend(ctx context.Context, l *Lease, ttl time.Duration) error {
	if l.Err() != nil {
		return l.notHeld()
	}
	rep, err := cc.roundTrip(ctx, call{key: l.key}, func(b []byte, id uint32) []byte {
		return appendExtend(b, id, extendMsg{key: l.key, id: l.id, ttl: ttl})
	})
	if err != nil {
		if errors.Is(err, ErrNotHeld) && l.Err() != nil {
			return l.notHeld()
		}
		return err
	}
	exp, err := decodeExpiry(rep.payload)
	if err != nil {
		return err
	}
	l.heardExpiry(exp, time.Now())
	return nil
}
