"""`python -m sharding.demo OUT ...`: generate the demo world's videos (sharding.demo.world)."""

from sharding.demo.world import main

main()
