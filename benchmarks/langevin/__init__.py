"""Does QSGLD's noise sample? The Langevin checks: a tilted double well against its Gibbs
density (`double_well`), the noise's whiteness and the stationary distribution in networks
(`diagnostics`), and two 2-D targets against their exact densities (`toy2d`, a table of
`benchmarks.sampling`)."""
