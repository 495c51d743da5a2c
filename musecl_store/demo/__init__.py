"""A synthetic city whose modalities each see part of what drives its indicators."""

from musecl_store.demo.city import DemoCity, make_demo_city

__all__ = ["DemoCity", "make_demo_city"]
