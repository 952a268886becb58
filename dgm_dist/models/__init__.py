"""nn.Modules and their math. Nothing here knows of Ray, MLflow or files."""
