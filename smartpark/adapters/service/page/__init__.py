"""The visitor registration page: HTML templates, CSS and JS served by the service (no build step, no CDN).

A package only so that the files ship in the wheel (package data).
"""
