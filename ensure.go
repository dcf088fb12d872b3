package lmx

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"
)

// Ensure returns a client of the broker at addr ("unix:///path" or
// "tcp://host:port", or any address SplitAddr reads), first starting one in this process, listening at
// addr, if none answers. When many processes race to do it, exactly one
// broker wins the address and every process ends up a client of it.
//
// The broker is returned when this process started it, else nil: the
// caller keeps it alive as long as others may use it, and shuts it down
// (which ends their sessions). brokerOpts configure that broker.
func Ensure(ctx context.Context, addr string, clientOpts []ClientOption, brokerOpts ...BrokerOption) (*Client, *Broker, error) {
	network, address, err := SplitAddr(addr)
	if err != nil {
		return nil, nil, err
	}
	for backoff := 5 * time.Millisecond; ; backoff = min(2*backoff, 200*time.Millisecond) {
		if c, err := Dial(ctx, addr, clientOpts...); err == nil {
			return c, nil, nil
		} else if errors.Is(err, ErrAuth) || errors.Is(err, ErrProtocol) || ctx.Err() != nil {
			return nil, nil, err // something answers, and says no
		}
		b := NewBroker(brokerOpts...)
		_, err := b.Listen(network, address)
		if err == nil {
			c, err := Dial(ctx, addr, clientOpts...)
			if err != nil {
				b.Close()
				return nil, nil, err
			}
			return c, b, nil
		}
		b.Close()
		if !errors.Is(err, syscall.EADDRINUSE) {
			return nil, nil, fmt.Errorf("lmx: ensure %s: %w", addr, err)
		}
		// Another process won the address: dial it once it listens.
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
	}
}
