"""Cameos: a person's registered likeness, usable only under their live consent."""
