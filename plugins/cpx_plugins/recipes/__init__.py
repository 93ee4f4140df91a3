"""Built-in recipes, installed as ``cpx_recipes`` so they work from any directory."""
