# SPDX-License-Identifier: Apache-2.0
"""A demo library registration site that uses cardd from another origin (cardd.demo.site)."""
