# SPDX-License-Identifier: Apache-2.0
"""cardd: a local card-reader service for Taiwanese libraries and schools."""

__version__ = "0.1.0"
