package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// cmdHealthcheck asks a broker's /healthz, for a container's HEALTHCHECK:
// the image has no curl, and Docker wants exit code 0 or 1.
func cmdHealthcheck(c *cli, cmd *command, args []string) error {
	f := c.newFlags(cmd)
	f.envPrefix = "LMX_BROKER_" // the address start serves it at, from the same variable
	metrics := f.String("metrics", "", "the `HOST:PORT` of start's --metrics; a wildcard host (0.0.0.0, ::) is asked on the loopback")
	timeout := f.Duration("timeout", 5*time.Second, "how long the check may take")
	f.fromEnv("metrics")
	if _, err := f.parseArgs(args, 0); err != nil {
		return err
	}
	if *metrics == "" {
		return usageErrorf("--metrics is missing: the HOST:PORT where lmx start serves /healthz")
	}
	host, port, err := net.SplitHostPort(*metrics)
	if err != nil {
		return usageErrorf("--metrics %q: not HOST:PORT", *metrics)
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
		if ip != nil && ip.To4() == nil {
			host = "::1"
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	url := "http://" + net.JoinHostPort(host, port) + "/healthz"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return withCode(exitError, fmt.Errorf("unhealthy: %w", err))
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	if resp.StatusCode != http.StatusOK {
		return withCode(exitError, fmt.Errorf("unhealthy: %s: %s %s", url, resp.Status, strings.TrimSpace(string(body))))
	}
	_, err = fmt.Fprintf(c.stdout, "healthy: %s\n", url)
	return err
}
