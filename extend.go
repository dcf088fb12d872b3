package lmx

import (
	"context"
	"encoding/binary"
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
	if ttl <= 0 {
		return time.Time{}, fmt.Errorf("%w: Extend(%v) must be positive", ErrInvalidOption, ttl)
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
	if ttl <= 0 {
		return time.Time{}, fmt.Errorf("%w: Extend(%v) must be positive", ErrInvalidOption, ttl)
	}
	rep, err := c.request(ctx, key, func(b []byte, reqID uint32) []byte { return appendExtend(b, reqID, key, id, ttl) })
	if err != nil {
		return time.Time{}, err
	}
	return decodeExpiry(rep.payload)
}

// appendExtend appends an Extend frame of the lease of key with lock id id.
func appendExtend(b []byte, reqID uint32, key string, id ulid.ULID, ttl time.Duration) []byte {
	return frame(b, opExtend, 0, 0, reqID, func(b []byte) []byte {
		b = appendString(b, key)
		b = append(b, id[:]...)
		return binary.AppendUvarint(b, uint64(ttl))
	})
}

// decodeExpiry reads the OK answering an Extend: the new expiry.
func decodeExpiry(p []byte) (time.Time, error) {
	d := decoder{b: p}
	exp := d.time()
	if err := d.done(); err != nil {
		return time.Time{}, fmt.Errorf("%w: extend: %v", ErrProtocol, err)
	}
	return exp, nil
}
