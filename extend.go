package lmx

import (
	"context"
	"fmt"
	"time"

	"github.com/oklog/ulid/v2"
)

// Extend sets the lease of key whose lock id is id to expire ttl from now,
// as its Lease.Extend would, and returns the new expiry; a lease without a
// TTL gets one. A wrong id is ErrNotHeld and changes nothing. It is how a
// process renews a lease another took, such as one `lmx acquire` printed.
func (b *Broker) Extend(ctx context.Context, key string, id ulid.ULID, ttl time.Duration) (time.Time, error) {
	if err := b.check(key); err != nil {
		return time.Time{}, err
	}
	if err := checkExtendTTL(ttl); err != nil {
		return time.Time{}, err
	}
	sh := b.shardFor(key)
	l := sh.leaseByID(key, id)
	if l == nil {
		return time.Time{}, ErrNotHeld
	}
	if err := sh.extend(ctx, l, ttl); err != nil {
		return time.Time{}, err
	}
	return l.Expires(), nil
}

// Extend sets the lease of key whose lock id is id to expire ttl from now,
// on whichever client or process holds it; see Broker.Extend. The holder's
// Lease.Expires learns of it only when that holder is this client.
func (c *Client) Extend(ctx context.Context, key string, id ulid.ULID, ttl time.Duration) (time.Time, error) {
	if err := checkExtendTTL(ttl); err != nil {
		return time.Time{}, err
	}
	rep, err := c.request(ctx, key, func(b []byte, reqID uint32) []byte {
		return appendExtend(b, reqID, extendMsg{key: key, id: id, ttl: ttl})
	})
	if err != nil {
		return time.Time{}, err
	}
	return decodeExpiry(rep.payload)
}

// checkExtendTTL checks the ttl of an Extend, by lease or by lock id, on
// any door.
func checkExtendTTL(ttl time.Duration) error {
	if ttl <= 0 {
		return fmt.Errorf("%w: Extend(%v) must be positive", ErrInvalidOption, ttl)
	}
	return nil
}
