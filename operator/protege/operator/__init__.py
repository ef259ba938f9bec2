"""protege.operator"""
